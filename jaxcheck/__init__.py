"""jaxcheck: is my JAX gradient right, and is it healthy?"""

from jaxcheck import flow as flow
from jaxcheck import init as init
from jaxcheck import models as models
from jaxcheck import nn as nn
from jaxcheck.check import assert_grads as assert_grads
from jaxcheck.check import check_grads as check_grads
from jaxcheck.report import Coordinate as Coordinate
from jaxcheck.report import GradCheckError as GradCheckError
from jaxcheck.report import GradCheckReport as GradCheckReport
from jaxcheck.report import LeafReport as LeafReport
from jaxcheck.report import Verdict as Verdict

__version__ = "0.1.0"

__all__ = [
    "Coordinate",
    "GradCheckError",
    "GradCheckReport",
    "LeafReport",
    "Verdict",
    "assert_grads",
    "check_grads",
    "flow",
    "init",
    "models",
    "nn",
]
