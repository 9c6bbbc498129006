/* PVH guest: prints the command line, the RAM in the memory map and the initrd's first
 * bytes from hvm_start_info (%ebx), then powers off through ACPI. With a command line
 * starting with "wait" it halts instead, for memory measurements. */
#include "pvh_note.S"
	.code32
	.text
	.globl _start
_start:
	mov $stack_top, %esp
	mov %ebx, %ebp			/* hvm_start_info */
	mov 24(%ebp), %esi		/* cmdline_paddr */
	call print_cmdline
	mov 40(%ebp), %esi		/* memmap_paddr */
	mov 48(%ebp), %ecx		/* memmap_entries */
	mov $24, %edx
	call sum_ram
	call print_ram
	xor %ecx, %ecx
	cmpl $0, 12(%ebp)		/* nr_modules */
	je 1f
	mov 16(%ebp), %edi		/* modlist_paddr */
	mov (%edi), %esi
	mov 8(%edi), %ecx
1:	call print_initrd
	mov 24(%ebp), %esi
	call cmd_is_wait
	je wait_forever
	jmp acpi_poweroff

#include "lib.S"

	.bss
	.align 16
	.space 4096
stack_top:
