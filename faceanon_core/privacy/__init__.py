"""Privacy checks: identity embeddings (:mod:`.identity`), the identity-leak guard that retries or
fails closed (:mod:`.guard`), and the re-identification evaluation with its report (:mod:`.evaluate`).

Builds on :mod:`faceanon_core.faces` and :mod:`faceanon_core.media`; the method is reached only
through the callables a caller hands in.
"""
