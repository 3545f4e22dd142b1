"""The partner API's handlers, one module per resource: ``charges`` (start, read, stop) and
``outlets`` (status, status requests, usage). Each handler authorizes the call, reads its
input (``cloud_gateway.inputs``), works through the shared ``Gateway`` and the repository,
and raises ``Problem`` for anything the partner must change."""
