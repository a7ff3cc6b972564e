"""The API's routes by group; ``service.app.create_app`` includes every router."""
