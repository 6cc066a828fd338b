"""One module per method: the function, its Result and its plot. Importing this package registers them all
(in the papers' order: the registry lists them as they are imported here)."""

from . import shuffle  # noqa: F401, I001  (registration order)
from . import impulse  # noqa: F401
from . import distinctiveness  # noqa: F401
from . import ablation  # noqa: F401
from . import activation_labels  # noqa: F401
from . import dead  # noqa: F401
from . import scores  # noqa: F401
from . import cka  # noqa: F401
