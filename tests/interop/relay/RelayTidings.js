// The documents of relay.mjs: tests/test_interop.py compiles them with relay-compiler over
// `tidings export-schema` (into a temporary directory) before each run.
graphql`
  query RelayTidingsTasksQuery($status: String!) {
    tasksConnection(first: 10, where: { status: { eq: $status } })
      @connection(key: "RelayTidings_tasksConnection") {
      edges {
        cursor
        node {
          id
          title
          status
        }
      }
      totalCount
    }
  }
`;

graphql`
  mutation RelayTidingsCreateTaskMutation($input: CreateTaskInput!) {
    createTask(input: $input) {
      id
      title
      status
    }
  }
`;

graphql`
  subscription RelayTidingsTaskEventsSubscription($where: TaskWhere) {
    taskEvents(where: $where) {
      id
      operation
      cursor
      record {
        id
        title
        status
      }
    }
  }
`;
