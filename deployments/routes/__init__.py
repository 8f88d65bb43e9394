"""HTTP routes of the ingress, grouped by what they serve. Each group is a mixin whose
methods FastAPI registers on ``deployments.http_app.app``; ``EchoRAGIngress`` inherits
them all, and Serve binds them to the replica."""
