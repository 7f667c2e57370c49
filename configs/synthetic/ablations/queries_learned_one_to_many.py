# The learned-query baseline (queries_learned.py) with the same one-to-many lever as one_to_many.py.
_base_ = ['./queries_learned.py']
model = dict(head=dict(one_to_many=dict(k=3, num_layers=2)))
