"""Attacks on key-protected models, and the security report (``kpfast attack``, ``kpfast audit``).

Threat model of every attack: the attacker holds a protected model file (weights, architecture
and the public transform config, never the key: :func:`load_stolen`) and, depending on the
attack, a small labelled batch, n plain labelled images, or a few (plain, protected) pairs.
Each module states its own threat model; each attack returns a dataclass (``.as_dict()`` is its
JSON). Given the true key ("evaluation mode"), an attack also reports how much of it it
recovered; the key never steers the attack.

- :mod:`.keyspace`: exact log2 sizes of the key space per chain and block size (:func:`key_space`);
- :mod:`.key_search`: random key search, many keys per launch, successive halving (:func:`random_key_search`);
- :mod:`.key_estimate`: heuristic key estimation by swaps and bit flips (:func:`estimate_key`);
- :mod:`.finetune`: fine-tuning the stolen weights against training from scratch (:func:`finetune_attack`);
- :mod:`.known_plaintext`: key recovery from (plain, protected) pairs (:func:`known_plaintext`);
- :mod:`.scoring`: what they share: the stolen model, candidate keys, ranking;
- :mod:`.report` and :mod:`.audit`: verdicts, Markdown and plots, and the resumable audit run.

Attacks that train (fine-tuning) do so through :func:`kpfast.engine.train`, so they are
resumable like every other run; key search and estimation keep their own progress files.
"""
from .audit import BUDGETS, STAGES, Budget, prepare, run_audit, run_stage, write_report
from .finetune import FinetuneResult, finetune_attack
from .key_estimate import KeyEstimateResult, estimate_key
from .key_search import KeySearchResult, random_key_search
from .keyspace import KeySpace, key_space, key_space_table
from .known_plaintext import (
           KnownPlaintextResult,
           known_plaintext,
           known_plaintext_sweep,
)
from .report import verdicts
from .scoring import StolenModel, candidate_keys, load_stolen, stolen_from

__all__ = [
           "BUDGETS",
           "STAGES",
           "Budget",
           "FinetuneResult",
           "KeyEstimateResult",
           "KeySearchResult",
           "KeySpace",
           "KnownPlaintextResult",
           "StolenModel",
           "candidate_keys",
           "estimate_key",
           "finetune_attack",
           "key_space",
           "key_space_table",
           "known_plaintext",
           "known_plaintext_sweep",
           "load_stolen",
           "prepare",
           "random_key_search",
           "run_audit",
           "run_stage",
           "stolen_from",
           "verdicts",
           "write_report",
]
