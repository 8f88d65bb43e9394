"""Inverse vectorisation (``echorag/inversion/``): what a stored vector still reveals."""

import numpy as np
from fastapi import HTTPException

from deployments.http_app import Admin, app
from echorag.serving.schemas import InvertRequest, InvertResponse

HTTP_INVERT_BUDGET = 2000  # about 15 s of e5 embedding on one CPU core


class VectorRoutes:
    @app.post("/vectors/invert", response_model=InvertResponse, dependencies=[Admin])
    async def invert_vector(self, request: InvertRequest) -> InvertResponse:
        """What a stored (or given) vector still reveals: the restored text, its cosine to the
        target and the method's trace. ``nearest`` is the store's own echo; ``iterative``
        consults the target's neighbours but never the target itself."""
        if (request.budget or 0) > HTTP_INVERT_BUDGET:
            raise HTTPException(422, f"budget is at most {HTTP_INVERT_BUDGET} over HTTP; "
                                     "echorag eval-inversion runs larger ones offline")
        if request.id is not None:
            vector = await self.retriever.stored_vector.remote(request.id, request.collection)
            if vector is None:
                raise HTTPException(404, f"no stored item {request.id!r} in {request.collection}")
        else:
            vector = np.asarray(request.vector, dtype=np.float32)
            dim = (await self._embedder()).dim
            if vector.shape[0] != dim or not np.isfinite(vector).all() or not np.any(vector):
                raise HTTPException(422, f"vector must be {dim} finite numbers, not all zero")
        exclude = None if request.method == "nearest" else request.id
        try:
            consult = await self.retriever.nearest_texts.remote(vector, request.collection, 8, exclude)
            return InvertResponse(**await self.embedder.invert.remote(
                vector, request.method, request.budget, request.side, consult
            ))
        except ValueError as exc:  # e.g. bag_of_tokens with an embedder that is not mean-pooled
            cause = getattr(exc, "cause", exc)  # raised in a replica: Ray wraps it
            raise HTTPException(422, f"cannot invert: {cause}") from None
