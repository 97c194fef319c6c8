"""Pipeline: the stages that combine training and evaluation, each writing into a run folder.

``experiment`` (the whole pipeline from one config), ``protocol`` (splits, SSL, classifier,
seeds), ``comparison`` (baselines and Bayes posteriors on the same test subjects), ``extract``
(segments cut by a trained segmenter), ``seg_run`` (restore and score a segmenter run),
``radiogrammetry_run``, ``predict`` (new radiographs) and ``report``. Nothing is re-exported
here, so that importing one stage does not import the others.
"""
