"""Inverse vectorisation: what does a stored vector still reveal about its text?

Restorers, from the cheapest to the most general:

- ``nearest``: the nearest texts the restorer can see (the store, or a corpus).
  The store's own echo: exact whenever the text itself is stored.
- ``bag_of_tokens`` (``token_bag``): for ``input_embedding_mean`` pooling (the original
  project's vectors: the mean of the input token embeddings), search for the token multiset
  whose embedding mean points exactly at the target, then order the tokens with a
  language model.
- ``bag_of_morphemes`` (``morphemes``): for any embedder, the bag-of-words inversion of
  Song & Raghunathan (2020): a linear decoder fitted on the corpus (its sentences and random
  spans of them, embedded once) predicts each morpheme's count from a vector; probing
  every corpus morpheme alone sharpens it; the bag that maximises the expected token F1
  is kept and joined in the order its morphemes usually take.
- ``iterative`` (``iterative``): for any embedder, a vec2text-style loop without a trained
  corrector: start from the nearest sentences, propose word and morpheme edits
  (Kiwi) and keep the ones that raise the cosine to the target, embedding every
  round of candidates in one batch.

``Inverter`` (``inverter``) runs them; ``metrics`` scores a restoration and ``evaluation``
measures a set of targets. The defence, a secret rotation of every vector, is
``echorag.retrieval.rotation``; ``results`` holds the result types ``POST /vectors/invert`` answers with.

Plain Python (numpy, torch only through the embedder and the LM); no Ray.
"""

from echorag.inversion.evaluation import check_no_overlap, evaluate
from echorag.inversion.inverter import METHODS, Inversion, Inverter, corpus_sentences
from echorag.inversion.language_model import LanguageModel, default_lm
from echorag.inversion.metrics import bleu, eval_morphemes, exact_match, token_f1
from echorag.inversion.token_bag import TokenBigrams, order_tokens, recover_token_bag

__all__ = [
    "METHODS", "Inversion", "Inverter", "LanguageModel", "TokenBigrams", "bleu", "check_no_overlap",
    "corpus_sentences", "default_lm", "eval_morphemes", "evaluate", "exact_match", "order_tokens",
    "recover_token_bag", "token_f1",
]
