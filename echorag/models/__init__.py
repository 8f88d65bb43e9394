"""Local language models: resolving a name to weights, the generation backends (vLLM,
transformers, an OpenAI API), the tiny and small offline students, devices and chat token
encoding. Never imports training code."""
