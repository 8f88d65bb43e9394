"""Finding passages: documents chunked and indexed in Chroma (dense) and BM25 (Kiwi
morphemes), embedders, the secret rotation of stored vectors, and the hybrid retriever that
analyses what it found."""
