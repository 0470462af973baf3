"""The platform layer (ARCHITECTURE.md): typed model URIs, artifact resolution, the checkpoint mirror,
model-stack loading from a checkpoint's spec, MLflow tracking and the chat client. Components, pipelines
and serving import it; it imports nothing above it."""
