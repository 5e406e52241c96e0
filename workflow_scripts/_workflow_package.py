"""Imported first by every workflow script: the workflow's own ``starlabels/`` comes first on
the import path, as it does for the Snakefile (rules/common.smk).

Jobs then run the code of the workflow that built the DAG, whatever else is installed, and a
job environment needs only the package's dependencies (envs/starlabels.yaml). Snakemake puts
this folder on the path of local scripts; for a workflow used from a URL it holds no package
folder, and the installed package is used.
"""
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
if (_ROOT / "starlabels" / "__init__.py").is_file() and str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))
