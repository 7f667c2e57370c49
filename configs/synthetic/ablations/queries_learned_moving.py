# The learned-query baseline (queries_learned.py) with the moving-state flag of moving.py.
_base_ = ['./queries_learned.py']
model = dict(head=dict(moving=dict(speed=0.2, loss_weight=0.25)))
