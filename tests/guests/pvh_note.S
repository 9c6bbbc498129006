/* The Xen ELF note naming the 32-bit PVH entry point (XEN_ELFNOTE_PHYS32_ENTRY = 18).
 * Built with -DNO_PVH_NOTE, a guest is a plain ELF that PVH loaders must refuse. */
#ifndef NO_PVH_NOTE
	.section .note.pvh, "a"
	.align 4
	.long 4
	.long 4
	.long 18
	.asciz "Xen"
	.align 4
	.long _start
#endif
