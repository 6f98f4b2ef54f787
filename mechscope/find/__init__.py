"""Function-interpretation benchmark, after FIND (Schwettmann et al. 2023), with our own generator.

- :class:`Function` (ground-truth code, description, seed, difficulty, domain, corruption),
  suites as JSONL (:func:`load_suite`, :func:`save_suite`, :func:`generate_suite`);
- the protocol: :class:`BlackBoxHandle` (counted, logged, budgeted queries) and
  :class:`Interpretation` (description, code, corrupted interval);
- scorers (:mod:`mechscope.find.scoring`), interpreters (:func:`get_interpreter`: offline
  symbolic / string-program / neuron search, and an LLM agent), and the runner
  (:func:`run_suite`, :func:`evaluate`, :func:`leaderboard`).

Example::

    from mechscope.find import evaluate, get_interpreter
    evaluate(lambda x: 3 * x**2 - 1, get_interpreter("offline"), "numeric", (-5, 5))["score"]
"""

from mechscope.find.functions import Function, compile_code
from mechscope.find.interpreters import OfflineInterpreter, get_interpreter
from mechscope.find.protocol import BlackBoxHandle, Interpretation, QueryBudgetError
from mechscope.find.runner import evaluate, evaluate_function, leaderboard, run_suite
from mechscope.find.scoring import score_interpretation
from mechscope.find.suite import Suite, generate_suite, load_suite, save_suite

__all__ = ["Function", "compile_code", "BlackBoxHandle", "Interpretation", "QueryBudgetError", "Suite",
           "generate_suite", "load_suite", "save_suite", "score_interpretation", "run_suite", "evaluate",
           "evaluate_function", "leaderboard", "get_interpreter", "OfflineInterpreter"]
