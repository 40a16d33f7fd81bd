"""Attacks on key-protected models (key search, key estimation, fine-tuning, known plaintext).

The threat model: the attacker holds a protected model's weights and architecture (a stolen
``ProtectedModel`` file, never its key) and, depending on the attack, some labelled images.
Attacks that train do so through :mod:`kpfast.engine` (:func:`kpfast.engine.train` for
fine-tuning a stolen classifier, :func:`kpfast.engine.fit` for anything else), so they are
resumable like every other run. Nothing is implemented here yet.
"""
