"""Answers from an analysis of the retrieved sentences: the evidence features, the learned
selector, extractive quoting, short answers, prompts and small talk. Plain Python over Kiwi
and numpy; imports nothing above it."""
