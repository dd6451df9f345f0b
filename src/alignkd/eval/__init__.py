"""Evaluation of distilled VLMs on GQA, ScienceQA, TextVQA, POPE, MME, MMBench and short-answer sets.

`alignkd eval` (`alignkd.eval.run`) generates answers with greedy decoding and writes an
answers file; `alignkd score` (`alignkd.eval.score`) scores it with each benchmark's
documented rule. `alignkd.eval.benchmarks` lists the benchmarks and their file formats.
"""
