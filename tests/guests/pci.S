/* PCI guest: scans bus 0 through configuration mechanism #1 (0xcf8/0xcfc) and prints
 * "pci 00:DD.0 VVVV:DDDD" for each present function 0, then powers off. */
#include "pvh_note.S"
	.code32
	.text
	.globl _start
_start:
	mov $stack_top, %esp
	xor %ebx, %ebx			/* device number */
1:	mov %ebx, %eax
	shl $11, %eax
	or $0x80000000, %eax
	mov $0xcf8, %dx
	out %eax, %dx
	mov $0xcfc, %dx
	in %dx, %eax
	cmp $0xffff, %ax
	je 2f
	mov %eax, %edi
	mov $s_pci, %esi
	call puts
	mov %ebx, %eax
	call puthex8
	mov $s_fn, %esi
	call puts
	mov %edi, %eax
	call puthex16
	mov $':', %al
	call putc
	mov %edi, %eax
	shr $16, %eax
	call puthex16
	mov $'\n', %al
	call putc
2:	inc %ebx
	cmp $32, %ebx
	jb 1b
	mov $s_done, %esi
	call puts
	jmp acpi_poweroff

#include "hex.S"
#include "lib.S"

	.section .rodata
s_pci:		.asciz "pci 00:"
s_fn:		.asciz ".0 "
s_done:		.asciz "pci scan done\n"

	.bss
	.align 16
	.space 4096
stack_top:
