"""The recovery study's lab: ablation arms of PASER and the study's tooling, outside the product's wheel.

``pip install -e lab/`` registers the arms (:data:`paser_lab.arms.ARMS`) as selection methods through the
product's entry-point group ``paser_assets.methods``; ``lab/recovery.py`` runs the study.
"""
