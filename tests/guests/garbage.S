/* Garbage guest: writes and reads junk on every port below 0x1000 and a spread of ports
 * above (sparing COM1, the ACPI PM block, the i8042's command port and port 0x92, whose
 * effects would be real: a reset from the last two), and on MMIO
 * addresses outside RAM (sparing the in-kernel IOAPIC and LAPIC pages); then prints
 * "alive" and powers off. The helper must log (rate-limited) and carry on. */
#include "pvh_note.S"
	.code32
	.text
	.globl _start
_start:
	mov $stack_top, %esp
	xor %ebx, %ebx			/* port */
1:	cmp $0x3f8, %bx			/* COM1 */
	jb 2f
	cmp $0x400, %bx
	jb 3f
2:	mov %bx, %ax
	and $0xffe0, %ax
	cmp $0x600, %ax			/* ACPI PM block */
	je 3f
	cmp $0x64, %bx			/* i8042 command: 0xfe would reset */
	je 3f
	cmp $0x92, %bx			/* port 0x92: bit 0 is a fast reset */
	je 3f
	mov %bx, %dx
	mov $0xa5, %al
	out %al, %dx
	in %dx, %al
	mov $0x5a5a, %ax
	out %ax, %dx
	in %dx, %eax
3:	cmp $0x1000, %ebx
	jae 4f
	inc %ebx
	jmp 1b
4:	add $0x101, %ebx
	cmp $0x10000, %ebx
	jb 1b

	mov $0x08000000, %edi		/* past RAM, below the PCI hole */
5:	movl $0xdeadbeef, (%edi)
	mov (%edi), %eax
	movb $0x77, 3(%edi)
	add $0x01000000, %edi
	cmp $0xfec00000, %edi		/* stop before the IOAPIC */
	jb 5b

	mov $s_alive, %esi
	call puts
	jmp acpi_poweroff

#include "lib.S"

	.section .rodata
s_alive:	.asciz "alive\n"

	.bss
	.align 16
	.space 4096
stack_top:
