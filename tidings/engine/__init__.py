"""The floor for GraphQL operations, which every transport calls: the schema built from the model,
documents parsed and validated within bounds, and the runner of one operation (queries and
mutations executed, subscriptions and live queries started and stopped, cursors)."""
