"""sf3d's registries: children of mmengine's root registries under the scope ``sf3d``.

Only what configs must build is registered (models, datasets, transforms, metrics,
hooks, optimizer wrappers, the DataLoader worker seeding function); inner modules are built
in plain Python. Because the registries are children of mmengine's roots, a config of
another OpenMMLab project can name ``sf3d.SpatialFormer`` once ``sf3d`` is importable.

The remaining children hold nothing of sf3d's own: they exist so that the Runner, working
in the ``sf3d`` scope, finds mmengine's samplers, optimizers, schedulers, loops, ... through
their parents without a "failed to search registry with scope" warning per lookup.
"""
from mmengine import registry as mm
from mmengine.registry import Registry

MODELS = Registry('model', parent=mm.MODELS, scope='sf3d', locations=['sf3d.models'])
DATASETS = Registry('dataset', parent=mm.DATASETS, scope='sf3d', locations=['sf3d.datasets'])
TRANSFORMS = Registry('transform', parent=mm.TRANSFORMS, scope='sf3d',
                      locations=['sf3d.datasets.transforms'])
METRICS = Registry('metric', parent=mm.METRICS, scope='sf3d', locations=['sf3d.evaluation'])
HOOKS = Registry('hook', parent=mm.HOOKS, scope='sf3d', locations=['sf3d.engine'])
FUNCTIONS = Registry('function', parent=mm.FUNCTIONS, scope='sf3d',
                     locations=['sf3d.engine', 'sf3d.datasets'])
OPTIM_WRAPPERS = Registry('optim_wrapper', parent=mm.OPTIM_WRAPPERS, scope='sf3d',
                          locations=['sf3d.engine'])

DATA_SAMPLERS = Registry('data sampler', parent=mm.DATA_SAMPLERS, scope='sf3d')
EVALUATOR = Registry('evaluator', parent=mm.EVALUATOR, scope='sf3d')
LOG_PROCESSORS = Registry('log_processor', parent=mm.LOG_PROCESSORS, scope='sf3d')
LOOPS = Registry('loop', parent=mm.LOOPS, scope='sf3d')
MODEL_WRAPPERS = Registry('model_wrapper', parent=mm.MODEL_WRAPPERS, scope='sf3d')
OPTIM_WRAPPER_CONSTRUCTORS = Registry('optimizer wrapper constructor',
                                      parent=mm.OPTIM_WRAPPER_CONSTRUCTORS, scope='sf3d')
OPTIMIZERS = Registry('optimizer', parent=mm.OPTIMIZERS, scope='sf3d')
PARAM_SCHEDULERS = Registry('parameter scheduler', parent=mm.PARAM_SCHEDULERS, scope='sf3d')
VISBACKENDS = Registry('vis_backend', parent=mm.VISBACKENDS, scope='sf3d')
VISUALIZERS = Registry('visualizer', parent=mm.VISUALIZERS, scope='sf3d')
WEIGHT_INITIALIZERS = Registry('weight initializer', parent=mm.WEIGHT_INITIALIZERS, scope='sf3d')
