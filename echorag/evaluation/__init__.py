"""Measuring retrieval and answers offline with the service's own code: metrics and the
eval-retrieval/eval-answers runners."""
