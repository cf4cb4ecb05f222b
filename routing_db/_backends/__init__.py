"""What each database backend and its drivers know, one module per backend
(``postgresql``, ``mysql``, ``sqlite``): a new driver or backend is one place.
The rest of routing_db asks ``registry`` which backend it deals with."""

__all__: list[str] = []
