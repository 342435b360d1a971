"""The attack suite: play a key-blind distiller against a tracemark pipeline and measure what survives.

``harvest`` collects traces through the real gRPC API over K accounts, ``transforms`` and ``paraphrase``
are the attacks (each maps a harvest to an attacked harvest using only the harvest), ``truth`` and
``measure`` score the pair signal and clean-trace damage against the ledger's ground truth, ``detect``
distils a student per attacked harvest and tests it, and ``suite`` runs the whole thing.
"""
