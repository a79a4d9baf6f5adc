//! Display controllers on the PCI bus (`/sys/bus/pci/devices`, class 0x03xx).
