/* Reset guest: CMOS byte 0x40 (battery-backed, survives a reset) counts boots. First boot:
 * set it, print, reset: through the i8042 (command 0xfe) by default, through the FADT's
 * reset register when the command line starts with "a", by a triple fault when it starts
 * with "t". Second boot: print, power off. */
#include "pvh_note.S"
	.code32
	.text
	.globl _start
_start:
	mov $stack_top, %esp
	mov 24(%ebx), %ebp		/* hvm_start_info.cmdline_paddr */
	mov $0x40, %al
	out %al, $0x70
	in $0x71, %al
	test %al, %al
	jnz 1f
	mov $1, %al
	out %al, $0x71
	mov $s_first, %esi
	call puts
	cmpb $'a', (%ebp)
	je acpi_reset
	cmpb $'t', (%ebp)
	je triple_fault
	mov $0xfe, %al
	out %al, $0x64
2:	cli
	hlt
	jmp 2b
1:	mov $s_second, %esi
	call puts
	jmp acpi_poweroff

/* Write the FADT's RESET_VALUE to its RESET_REG (an I/O port here). */
acpi_reset:
	mov $0xe0000, %esi
1:	cmpl $0x20445352, (%esi)	/* "RSD " */
	je 2f
	add $16, %esi
	cmp $0x100000, %esi
	jb 1b
	jmp 9f
2:	mov 24(%esi), %esi		/* XSDT */
	mov 36(%esi), %ebx		/* first entry: the FADT */
	cmpl $0x50434146, (%ebx)	/* "FACP" */
	jne 9f
	mov 120(%ebx), %edx		/* RESET_REG.address */
	mov 128(%ebx), %al		/* RESET_VALUE */
	out %al, %dx
9:	cli
	hlt
	jmp 9b

/* No IDT: the #UD cannot be delivered, nor the #DF, so the CPU shuts down. */
triple_fault:
	lidt null_idt
	ud2

#include "lib.S"

	.section .rodata
	.align 8
null_idt:	.word 0
		.long 0
s_first:	.asciz "reset: first boot\n"
s_second:	.asciz "reset: second boot\n"

	.bss
	.align 16
	.space 4096
stack_top:
