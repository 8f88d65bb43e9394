"""The request path, independent of where its parts run: the chat pipeline, in-process
services, traffic routing between versions, session memory, rate limits, and the HTTP
contract (schemas, the OpenAI mapping)."""
