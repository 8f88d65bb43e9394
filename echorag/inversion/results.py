"""What a restoration is: the restorers' names, the two ways a vector was embedded, and
the result with its trace. ``POST /vectors/invert`` answers with these very models."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

Method = Literal["nearest", "bag_of_tokens", "bag_of_morphemes", "iterative"]
Side = Literal["passage", "query"]


class InvertStep(BaseModel):
    step: int
    action: str
    text: str
    cosine: float


class InvertResponse(BaseModel):
    text: str
    cosine: float = Field(description="cosine between the reconstruction's embedding and the target")
    method: Method
    trace: list[InvertStep]
    seconds: float
