"""sf3d's registries: children of mmengine's root registries under the scope ``sf3d``.

Only what configs must build is registered (models, datasets, transforms, metrics,
hooks, optimizer wrappers, the DataLoader worker seeding function); inner modules are built in plain Python.  Because the
registries are children of mmengine's roots, a config of another OpenMMLab project
can name ``sf3d.SpatialFormer`` once ``sf3d`` is importable.
"""
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import FUNCTIONS as MMENGINE_FUNCTIONS
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import METRICS as MMENGINE_METRICS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import OPTIM_WRAPPERS as MMENGINE_OPTIM_WRAPPERS
from mmengine.registry import TRANSFORMS as MMENGINE_TRANSFORMS
from mmengine.registry import Registry

MODELS = Registry('model', parent=MMENGINE_MODELS, scope='sf3d', locations=['sf3d.models'])
DATASETS = Registry('dataset', parent=MMENGINE_DATASETS, scope='sf3d', locations=['sf3d.datasets'])
TRANSFORMS = Registry('transform', parent=MMENGINE_TRANSFORMS, scope='sf3d',
                      locations=['sf3d.datasets.transforms'])
METRICS = Registry('metric', parent=MMENGINE_METRICS, scope='sf3d', locations=['sf3d.evaluation'])
HOOKS = Registry('hook', parent=MMENGINE_HOOKS, scope='sf3d', locations=['sf3d.engine'])
FUNCTIONS = Registry('function', parent=MMENGINE_FUNCTIONS, scope='sf3d',
                     locations=['sf3d.engine', 'sf3d.datasets'])
OPTIM_WRAPPERS = Registry('optim_wrapper', parent=MMENGINE_OPTIM_WRAPPERS, scope='sf3d',
                          locations=['sf3d.engine'])
