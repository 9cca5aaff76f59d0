"""The paper's task families: commonsense (8 datasets), math (MetaMathQA → GSM8K) and dialogue (ConvAI2)."""
