"""Keep only the widget state that a notebook's displayed outputs reference.

Executing notebook 06 stores the state of every widget model ever created (hundreds, for
the explorer's images); the outputs need only those they reference, directly or through
other models. Run after re-executing a notebook with widgets:

    python scripts/prune_widget_state.py notebooks/06_mask_explorer.ipynb
"""

import json
import re
import sys

import nbformat

STATE = "application/vnd.jupyter.widget-state+json"
VIEW = "application/vnd.jupyter.widget-view+json"


def prune(path: str) -> None:
    notebook = nbformat.read(path, 4)
    state = notebook.metadata.get("widgets", {}).get(STATE, {}).get("state", {})
    todo = [
        output["data"][VIEW]["model_id"]
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if VIEW in output.get("data", {})
    ]
    keep = set()
    while todo:  # every model reachable from a displayed view
        model = todo.pop()
        if model in keep or model not in state:
            continue
        keep.add(model)
        todo += re.findall(r"IPY_MODEL_([0-9a-f]+)", json.dumps(state[model]))
    if state:
        notebook.metadata["widgets"][STATE]["state"] = {
            model: value for model, value in state.items() if model in keep
        }
    nbformat.write(notebook, path)
    print(f"{path}: kept {len(keep)} of {len(state)} widget models")


if __name__ == "__main__":
    for argument in sys.argv[1:]:
        prune(argument)
