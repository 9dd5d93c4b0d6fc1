"""Code that the ingress and the worker agree on: settings, queue names, the schema, the payload type."""
