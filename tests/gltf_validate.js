// node tests/gltf_validate.js <folder holding node_modules/gltf-validator> file.glb ...
// Prints one JSON line per file: {"file": ..., "issues": <the Khronos glTF Validator's issues report>}.
const path = require('path');
const fs = require('fs');
const validator = require(path.join(path.resolve(process.argv[2]), 'node_modules', 'gltf-validator'));
(async () => {
  for (const file of process.argv.slice(3)) {
    const report = await validator.validateBytes(new Uint8Array(fs.readFileSync(file)), {maxIssues: 100});
    console.log(JSON.stringify({file, issues: report.issues}));
  }
})().catch((e) => { console.error(e); process.exit(2); });
