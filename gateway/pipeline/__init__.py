"""The request path below decode: route, coalesce, admit, batch."""
