/* SMP guest: the boot CPU copies a real-mode trampoline to 0x8000 and starts CPU 1 with
 * INIT + SIPI through its local APIC's ICR. CPU 1 prints a line and sets a flag at 0x9000;
 * CPU 0 waits for the flag, prints, and powers off. */
#include "pvh_note.S"
	.code32
	.text
	.globl _start
_start:
	mov $stack_top, %esp
	mov $s_bsp, %esi
	call puts
	movl $0x1ff, 0xfee000f0		/* SVR: APIC software-enabled */
	mov $ap_tramp, %esi
	mov $0x8000, %edi
	mov $(ap_tramp_end - ap_tramp), %ecx
	rep movsb
	movl $0, 0x9000
	movl $(1 << 24), 0xfee00310	/* ICR high: APIC id 1 */
	movl $0x00004500, 0xfee00300	/* INIT, assert */
	movl $(1 << 24), 0xfee00310
	movl $0x00004608, 0xfee00300	/* SIPI, vector 0x08 -> 0x8000 */
	mov $2000000, %ecx
1:	cmpl $1, 0x9000
	je 2f
	pause
	loop 1b
	mov $s_timeout, %esi
	call puts
	jmp acpi_poweroff
2:	mov $s_done, %esi
	call puts
	jmp acpi_poweroff

	.code16
ap_tramp:
	cli
	mov %cs, %ax
	mov %ax, %ds
	mov $(ap_msg - ap_tramp), %si
1:	lodsb
	test %al, %al
	jz 2f
	mov %al, %bl
	mov $0x3fd, %dx
3:	in %dx, %al
	test $0x20, %al
	jz 3b
	mov %bl, %al
	mov $0x3f8, %dx
	out %al, %dx
	jmp 1b
2:	movl $1, 0x1000			/* ds = 0x800: linear 0x9000 */
4:	hlt
	jmp 4b
ap_msg:	.asciz "ap: hello from cpu 1\n"
ap_tramp_end:
	.code32

#include "lib.S"

	.section .rodata
s_bsp:		.asciz "bsp: starting cpu 1\n"
s_done:		.asciz "bsp: cpu 1 is up\n"
s_timeout:	.asciz "bsp: cpu 1 did not start\n"

	.bss
	.align 16
	.space 4096
stack_top:
