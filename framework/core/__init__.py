"""The model and its contracts: the slot interfaces every component implements, one registry per slot, the experiment
config (schema, loading, validation), the assembled ``SegEarthModel`` with its read-outs, the slim-checkpoint weights
logic and the ``segearth components`` listing. Nothing here knows a dataset, a trainer or a tracking store."""
