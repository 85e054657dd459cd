"""The paper's experiments as commands: the whole pipeline (baseline, teacher, student and their table),
the ablations of Tables II and III, the feature probe and the layer tables."""
