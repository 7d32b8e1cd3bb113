"""A sequential two-tower retrieval model: hybrid item tower (frozen text + ID) and a SASRec-style user tower.

:mod:`rayrec.seqrec.model` defines the towers (torch), :mod:`rayrec.seqrec.artifact` saves and loads the model
directory (safetensors + JSON) and writes its item vectors as an item index. Training lives in
:mod:`trainers.seqrec`; ``rayrec eval-retrieval --user-model DIR`` scores users with the user tower.
"""
