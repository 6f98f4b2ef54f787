"""Circuit tasks — IOI, greater-than, docstring, induction — for any tokenizer, and published
ground-truth circuits as data.

    from mechscope.tasks import make_task, load_ground_truth
    task = make_task("ioi", tokenizer, n=128, seed=0, split="heldout", variant="code")
    task.metric(model(task.clean))             # logit difference at the answer position
    gt = load_ground_truth("ioi-gpt2-small")   # Wang et al. 2022's heads, with roles and edges
"""

from mechscope.tasks.task import METRICS, Task, TaskError, VocabularyError
from mechscope.tasks.registry import list_tasks, make_task
from mechscope.tasks.ground_truth import GroundTruth, list_ground_truths, load_ground_truth, parse_node

__all__ = ["Task", "TaskError", "VocabularyError", "METRICS", "make_task", "list_tasks", "GroundTruth", "load_ground_truth",
           "list_ground_truths", "parse_node"]
