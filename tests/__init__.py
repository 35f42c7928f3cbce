"""fitchat's tests, in folders that mirror the packages; support modules (the local Hub, models, fakes) at the top."""

from pathlib import Path

#: The checkout: where subprocess tests run fitchat from and read README.md, pyproject.toml, packaging/.
REPO_ROOT = Path(__file__).resolve().parent.parent
