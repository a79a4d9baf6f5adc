//! `fog-bench` owns fog-agent's hardware benchmark kernels and their statistics: CPU, memory,
//! OpenCL devices, network and storage. It runs without the agent and knows nothing of its types.
