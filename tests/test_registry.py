"""Another OpenMMLab project (its own default scope) names sf3d's modules as ``sf3d.X``."""
from mmengine.registry import MODELS as ROOT_MODELS
from mmengine.registry import DefaultScope

import sf3d.models  # noqa: F401  (what custom_imports=dict(imports=['sf3d.models']) does)
from sf3d.models import SpatialFormer


def test_foreign_scope_builds_sf3d_backbone():
    tiny = dict(dims=(16, 32, 32, 32), heads=(1, 2, 2, 2), depths=(1, 1, 1, 1))
    with DefaultScope.overwrite_default_scope('mmdet3d'):
        model = ROOT_MODELS.build(dict(type='sf3d.SpatialFormer', arch=tiny))
    assert type(model) is SpatialFormer and model.out_strides == [4, 8, 16, 32]
