"""Rewards behind one interface (base.Reward): the RLT reward (rlt), the correct-generation term
(correct_generation), their weighted sum (composite), and the one way callers get the recipe's reward
(build.build_reward)."""
