// The app state that tests may read through window.__throughline.state() (never tokens).

export const appState = {
  user: null, // {id, email, full_name, plan}
  activeThreadId: null,
  connection: "offline", // connecting | connected | reconnecting | offline
};

export function resetState() {
  appState.user = null;
  appState.activeThreadId = null;
  appState.connection = "offline";
}

export function snapshot() {
  return {
    user: appState.user ? { ...appState.user } : null,
    activeThreadId: appState.activeThreadId,
    connection: appState.connection,
  };
}
