/* All-CPU guest: the boot CPU wakes every other CPU with a broadcast INIT + SIPI (ICR
 * shorthand "all excluding self"). Each AP reads its APIC id from CPUID leaf 1 and prints
 * it under a spinlock, then counts itself in; the boot CPU waits for `expected` APs (the
 * command line's first character, a digit) and powers off. APs have no stack: no calls. */
#include "pvh_note.S"
	.code32
	.text
	.globl _start
_start:
	mov $stack_top, %esp
	mov 24(%ebx), %esi		/* hvm_start_info.cmdline_paddr */
	movzbl (%esi), %ebp
	sub $'0', %ebp			/* APs expected */
	movl $0x1ff, 0xfee000f0		/* SVR: APIC software-enabled */
	mov $ap_tramp, %esi
	mov $0x8000, %edi
	mov $(ap_tramp_end - ap_tramp), %ecx
	rep movsb
	movl $0, 0x9000			/* APs up */
	movl $0, 0x9004			/* console lock */
	movl $0x000c4500, 0xfee00300	/* INIT, all excluding self */
	movl $0x000c4608, 0xfee00300	/* SIPI, vector 0x08 -> 0x8000 */
	mov $4000000, %ecx
1:	cmp %ebp, 0x9000
	je 2f
	pause
	loop 1b
	mov $s_timeout, %esi
	call puts
	jmp acpi_poweroff
2:	mov $s_bsp, %esi
	call puts
	mov %ebp, %eax
	call putdec
	mov $s_up, %esi
	call puts
	jmp acpi_poweroff

.macro putc16 reg
	mov $0x3fd, %dx
99:	in %dx, %al
	test $0x20, %al
	jz 99b
	mov \reg, %al
	mov $0x3f8, %dx
	out %al, %dx
.endm

	.code16
ap_tramp:
	cli
	mov %cs, %ax
	mov %ax, %ds
	mov $1, %eax
	cpuid
	shr $24, %ebx			/* this CPU's initial APIC id */
1:	mov $1, %al
	xchg %al, 0x1004		/* linear 0x9004 */
	test %al, %al
	jz 2f
	pause
	jmp 1b
2:	mov $(ap_msg - ap_tramp), %si
3:	mov (%si), %cl
	test %cl, %cl
	jz 4f
	putc16 %cl
	inc %si
	jmp 3b
4:	mov %bl, %cl
	add $'0', %cl
	putc16 %cl
	mov $'\n', %cl
	putc16 %cl
	movb $0, 0x1004			/* release the console */
	lock incl 0x1000		/* linear 0x9000 */
5:	hlt
	jmp 5b
ap_msg:	.asciz "ap: apic id "
ap_tramp_end:
	.code32

#include "lib.S"

	.section .rodata
s_bsp:		.asciz "bsp: "
s_up:		.asciz " APs up\n"
s_timeout:	.asciz "bsp: APs did not all start\n"

	.bss
	.align 16
	.space 4096
stack_top:
