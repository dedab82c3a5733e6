"""Registries of sparsevision: children of mmengine's root registries.

Scope ``sparsevision``. Each registry names the modules that fill it
(``locations``), so ``MODELS.build(dict(type='sparsevision.X'))`` works from a
process that imported only mmengine, and from configs of other OpenMMLab
projects, with no ``custom_imports``.
"""
from mmengine.registry import DATA_SAMPLERS as MMENGINE_DATA_SAMPLERS
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import EVALUATOR as MMENGINE_EVALUATOR
from mmengine.registry import FUNCTIONS as MMENGINE_FUNCTIONS
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import INFERENCERS as MMENGINE_INFERENCERS
from mmengine.registry import LOG_PROCESSORS as MMENGINE_LOG_PROCESSORS
from mmengine.registry import LOOPS as MMENGINE_LOOPS
from mmengine.registry import METRICS as MMENGINE_METRICS
from mmengine.registry import MODEL_WRAPPERS as MMENGINE_MODEL_WRAPPERS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS as MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.registry import OPTIM_WRAPPERS as MMENGINE_OPTIM_WRAPPERS
from mmengine.registry import OPTIMIZERS as MMENGINE_OPTIMIZERS
from mmengine.registry import PARAM_SCHEDULERS as MMENGINE_PARAM_SCHEDULERS
from mmengine.registry import RUNNERS as MMENGINE_RUNNERS
from mmengine.registry import TASK_UTILS as MMENGINE_TASK_UTILS
from mmengine.registry import TRANSFORMS as MMENGINE_TRANSFORMS
from mmengine.registry import VISBACKENDS as MMENGINE_VISBACKENDS
from mmengine.registry import VISUALIZERS as MMENGINE_VISUALIZERS
from mmengine.registry import WEIGHT_INITIALIZERS as MMENGINE_WEIGHT_INITIALIZERS
from mmengine.registry import DefaultScope, Registry, build_model_from_cfg

SCOPE = 'sparsevision'


def build_model_in_own_scope(cfg, registry, default_args=None):
    """Build a model with ``sparsevision`` as the default scope.

    A sparsevision model built from another project's config (``type='sparsevision.X'``
    under ``default_scope='mmdet3d'``) then finds its unprefixed sub-modules
    (backbone, head, ...) here; prefixed ones (``'mmdet3d.Y'``) still resolve
    in their own project.
    """
    with DefaultScope.overwrite_default_scope(SCOPE):
        return build_model_from_cfg(cfg, registry, default_args)


MODELS = Registry('model', parent=MMENGINE_MODELS, scope=SCOPE, build_func=build_model_in_own_scope,
                  locations=['sparsevision.models'])
MODEL_WRAPPERS = Registry('model_wrapper', parent=MMENGINE_MODEL_WRAPPERS, scope=SCOPE,
                          locations=['sparsevision.models'])
WEIGHT_INITIALIZERS = Registry('weight initializer', parent=MMENGINE_WEIGHT_INITIALIZERS, scope=SCOPE,
                               locations=['sparsevision.models'])
TASK_UTILS = Registry('task util', parent=MMENGINE_TASK_UTILS, scope=SCOPE, locations=['sparsevision.models'])
DATASETS = Registry('dataset', parent=MMENGINE_DATASETS, scope=SCOPE, locations=['sparsevision.datasets'])
DATA_SAMPLERS = Registry('data sampler', parent=MMENGINE_DATA_SAMPLERS, scope=SCOPE,
                         locations=['sparsevision.datasets'])
TRANSFORMS = Registry('transform', parent=MMENGINE_TRANSFORMS, scope=SCOPE,
                      locations=['sparsevision.datasets.transforms'])
METRICS = Registry('metric', parent=MMENGINE_METRICS, scope=SCOPE, locations=['sparsevision.evaluation'])
EVALUATOR = Registry('evaluator', parent=MMENGINE_EVALUATOR, scope=SCOPE, locations=['sparsevision.evaluation'])
HOOKS = Registry('hook', parent=MMENGINE_HOOKS, scope=SCOPE, locations=['sparsevision.engine'])
LOOPS = Registry('loop', parent=MMENGINE_LOOPS, scope=SCOPE, locations=['sparsevision.engine'])
RUNNERS = Registry('runner', parent=MMENGINE_RUNNERS, scope=SCOPE, locations=['sparsevision.engine'])
OPTIMIZERS = Registry('optimizer', parent=MMENGINE_OPTIMIZERS, scope=SCOPE, locations=['sparsevision.engine'])
OPTIM_WRAPPERS = Registry('optim_wrapper', parent=MMENGINE_OPTIM_WRAPPERS, scope=SCOPE,
                          locations=['sparsevision.engine'])
OPTIM_WRAPPER_CONSTRUCTORS = Registry('optimizer wrapper constructor', parent=MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS,
                                      scope=SCOPE, locations=['sparsevision.engine'])
PARAM_SCHEDULERS = Registry('parameter scheduler', parent=MMENGINE_PARAM_SCHEDULERS, scope=SCOPE,
                            locations=['sparsevision.engine'])
LOG_PROCESSORS = Registry('log_processor', parent=MMENGINE_LOG_PROCESSORS, scope=SCOPE,
                          locations=['sparsevision.engine'])
# No visualizers or vis backends of our own yet: mmengine's are found through the parents.
VISUALIZERS = Registry('visualizer', parent=MMENGINE_VISUALIZERS, scope=SCOPE)
VISBACKENDS = Registry('vis_backend', parent=MMENGINE_VISBACKENDS, scope=SCOPE)
INFERENCERS = Registry('inferencer', parent=MMENGINE_INFERENCERS, scope=SCOPE, locations=['sparsevision.apis'])
FUNCTIONS = Registry('function', parent=MMENGINE_FUNCTIONS, scope=SCOPE, locations=['sparsevision.utils'])
