"""The HTTP service: ``create_app(settings)``, its routes, the contract's error shape, auth and OpenAPI."""
